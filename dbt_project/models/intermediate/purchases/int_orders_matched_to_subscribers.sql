{#
    Purchases (orders not in var('non_purchase_order_statuses'), not deleted) with the subscriber
    who made them: the order's subscriber_id, or, for orders without one, the subscriber of the
    same account with the order's (normalised) email — the earliest created when several share it.

    A view over the raw order changes (see macros/purchases.sql): the purchase marts compute the
    same rows themselves, for all orders or, incrementally, for the orders of a few subscribers.
#}
{{ matched_purchases() }}
