{#
    Purchases, computed from Recart's raw order changes by the one model that summarises them
    (int_purchases_summarised_per_subscriber; the view int_orders_matched_to_subscribers shows the
    same rows). There is no persisted order-level table: at 10M orders writing one took longer
    than computing the summaries from the raw changes, and an incremental run reads the raw
    changes of the few orders it needs (their whole history: a filter on a view over all orders
    would not reach below its deduplication).
#}

{# An order status that counts as a purchase: not in var('non_purchase_order_statuses'). #}
{% macro is_purchase_status(status_column) -%}
    coalesce(lower(trim({{ status_column }})), '') not in ({{ sql_string_list(var('non_purchase_order_statuses')) }})
{%- endmacro %}


{#
    Purchases with the subscriber who made them: one row per (account_id, order_id) of an order
    that is a purchase, not deleted, and has a subscriber — its subscriber_id, or, for an order
    without one (a guest order), the subscriber of the same account with the order's normalised
    email, the earliest created when several share it.

    order_keys: SQL selecting (account_id, order_id) — only those orders are read (with their
    whole change history). none: every order.
#}
{% macro matched_purchases(order_keys=none) -%}
    with

    -- the few orders' changes are read twice below (deduplication, guest emails): materialized,
    -- one scan of raw_orders instead of two (0.3 s of a daily build at 10M orders); all of
    -- them (a full build) would cost more to hold than to scan twice
    order_changes as {{ 'materialized' if order_keys else 'not materialized' }} (

        select * from {{ source('recart', 'raw_orders') }}
        {%- if order_keys %}
        where (account_id, order_id) in ({{ order_keys }})
        {%- endif %}

    ),

    latest_orders as not materialized (

        select *
        from
        {%- if order_keys %}
            {{ latest_of_few_changes('order_changes', ['account_id', 'order_id']) }}
        {%- else %}
            {{ latest_of_all_changes('order_changes', ['account_id', 'order_id']) }}
        {%- endif %}

    ),

    purchases as not materialized (

        select
            cast(account_id as varchar) as account_id,
            cast(order_id as varchar) as order_id,
            cast(subscriber_id as varchar) as subscriber_id,
            -- only guest orders need their email (normalising all of them is a second per order)
            case when subscriber_id is null then {{ normalize_email('email') }} end as guest_email,
            placed_at,
            total_amount,
            upper(currency) as currency,
            _loaded_at as loaded_at

        from latest_orders
        where
            not coalesce(deleted, false)
            and {{ is_purchase_status('status') }}

    ),

    email_owners as (

        select
            account_id,
            email,
            subscriber_id,
            loaded_at

        from {{ ref('stg_recart__subscribers') }}
        where
            email is not null
            -- the emails of guest orders, read from the changes: reading `purchases` here would
            -- deduplicate every order a second time
            and (account_id, email) in (
                select
                    order_changes.account_id,
                    {{ normalize_email('order_changes.email') }}
                from order_changes
                where order_changes.subscriber_id is null
            )
        qualify row_number() over (
            partition by account_id, email
            order by created_at asc, subscriber_id asc
        ) = 1

    )

    select
        purchases.account_id,
        purchases.order_id,
        coalesce(purchases.subscriber_id, email_owners.subscriber_id) as subscriber_id,
        purchases.subscriber_id is null as is_matched_by_email,
        purchases.placed_at,
        purchases.total_amount,
        purchases.currency,
        greatest(purchases.loaded_at, email_owners.loaded_at) as loaded_at

    from purchases
    left join email_owners
        on
            purchases.account_id = email_owners.account_id
            and purchases.guest_email = email_owners.email
    where coalesce(purchases.subscriber_id, email_owners.subscriber_id) is not null
{%- endmacro %}


{#
    The (account_id, order_id) of every order that is or was the purchase of a subscriber in
    `subscribers` (a relation or CTE of account_id, subscriber_id): any change of it names the
    subscriber, or it is a guest order with the subscriber's current email. A superset:
    matched_purchases decides whose each one is now.
#}
{% macro orders_of_subscribers(subscribers) -%}
    select
        account_id,
        order_id
    from {{ source('recart', 'raw_orders') }}
    where (account_id, subscriber_id) in (
        select
            account_id,
            subscriber_id
        from {{ subscribers }}
    )

    union

    select
        account_id,
        order_id
    from {{ source('recart', 'raw_orders') }}
    where
        subscriber_id is null
        and (account_id, {{ normalize_email('email') }}) in (
            select
                current_subscribers.account_id,
                current_subscribers.email
            from {{ ref('stg_recart__subscribers') }} as current_subscribers
            where
                current_subscribers.email is not null
                and (current_subscribers.account_id, current_subscribers.subscriber_id) in (
                    select
                        account_id,
                        subscriber_id
                    from {{ subscribers }}
                )
        )
{%- endmacro %}
