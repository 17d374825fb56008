{#
    Purchases (orders not in var('non_purchase_order_statuses')) with the subscriber who made
    them: the order's subscriber_id, or, for orders without one, the subscriber of the same
    account with the order's (normalised) email — the earliest created when several share it.
#}
with

orders as (

    select * from {{ ref('stg_recart__orders') }}

),

subscribers as (

    select * from {{ ref('stg_recart__subscribers') }}

),

subscriber_per_email as (

    select
        account_id,
        email,
        subscriber_id,
        row_number() over (
            partition by account_id, email
            order by created_at asc, subscriber_id asc
        ) as email_owner_rank

    from subscribers
    where email is not null

),

purchases as (

    select
        orders.account_id,
        orders.order_id,
        coalesce(orders.subscriber_id, subscriber_per_email.subscriber_id) as subscriber_id,
        orders.subscriber_id is null as is_matched_by_email,
        orders.placed_at,
        orders.total_amount,
        orders.currency

    from orders
    left join subscriber_per_email
        on
            orders.subscriber_id is null
            and orders.account_id = subscriber_per_email.account_id
            and orders.email = subscriber_per_email.email
            and subscriber_per_email.email_owner_rank = 1
    where orders.is_purchase

),

matched_purchases as (

    select * from purchases
    where subscriber_id is not null

)

select * from matched_purchases
