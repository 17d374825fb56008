{{
  config(
    materialized='incremental',
    unique_key=['account_id', 'order_id'],
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
    post_hook="{{ drop_tombstones('subscriber_id is null') }}"
  )
}}

{#
    Purchases (orders not in var('non_purchase_order_statuses')) with the subscriber who made
    them: the order's subscriber_id, or, for orders without one, the subscriber of the same
    account with the order's (normalised) email — the earliest created when several share it.

    A table, read by purchases, product tags and tests alike. Incremental: a run reconsiders the
    orders with changes loaded since the watermark and the guest orders whose email belongs to a
    subscriber changed since then (its owner may change); a reconsidered order that is no
    (matched) purchase any more comes out as a tombstone (subscriber_id null), removed by the
    post-hook.
#}

-- Read by the incremental branch only (dbt learns dependencies while parsing, not incremental):
-- depends_on: {{ source('recart', 'raw_subscribers') }}
-- depends_on: {{ source('recart', 'raw_orders') }}
with

all_orders as not materialized (

    select * from {{ ref('stg_recart__orders') }}

),

subscribers as (

    select * from {{ ref('stg_recart__subscribers') }}

),

{% if is_incremental() %}

changed_subscribers as (

    {{ subscriber_versions_changed_since(incremental_watermark()) }}

),

orders_to_reconsider as (

    select
        account_id,
        order_id

    from {{ source('recart', 'raw_orders') }}
    where _loaded_at >= {{ incremental_watermark() }}

    union

    select
        all_orders.account_id,
        all_orders.order_id

    from all_orders
    inner join changed_subscribers
        on
            all_orders.account_id = changed_subscribers.account_id
            and all_orders.email = changed_subscribers.email
    where all_orders.subscriber_id is null

),

orders as not materialized (

    -- a join, not `in`: DuckDB then builds its hash table on the few keys, not on every order
    select all_orders.*
    from orders_to_reconsider
    inner join all_orders
        on
            orders_to_reconsider.account_id = all_orders.account_id
            and orders_to_reconsider.order_id = all_orders.order_id

),

{% else %}

orders as not materialized (

    select * from all_orders

),

{% endif %}

subscriber_per_email as (

    select
        account_id,
        email,
        subscriber_id,
        loaded_at,
        row_number() over (
            partition by account_id, email
            order by created_at asc, subscriber_id asc
        ) as email_owner_rank

    from subscribers
    where
        email is not null
        -- only the emails of guest orders are looked up
        and (account_id, email) in (
            select
                orders.account_id,
                orders.email
            from orders
            where orders.subscriber_id is null
        )

),

purchases as (

    select
        orders.account_id,
        orders.order_id,
        coalesce(orders.subscriber_id, subscriber_per_email.subscriber_id) as subscriber_id,
        orders.subscriber_id is null as is_matched_by_email,
        orders.placed_at,
        orders.total_amount,
        orders.currency,
        greatest(orders.loaded_at, subscriber_per_email.loaded_at) as loaded_at

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

),

{% if is_incremental() %}

tombstones as (

    select
        orders_to_reconsider.account_id,
        orders_to_reconsider.order_id,
        cast(null as varchar) as subscriber_id,
        cast(null as boolean) as is_matched_by_email,
        cast(null as timestamp with time zone) as placed_at,
        cast(null as decimal(18, 2)) as total_amount,
        cast(null as varchar) as currency,
        cast(null as timestamp with time zone) as loaded_at

    from orders_to_reconsider
    left join matched_purchases
        on
            orders_to_reconsider.account_id = matched_purchases.account_id
            and orders_to_reconsider.order_id = matched_purchases.order_id
    where matched_purchases.order_id is null

),

{% endif %}

purchases_and_tombstones as (

    select * from matched_purchases
    {% if is_incremental() %}
    union all
    select * from tombstones
    {% endif %}

)

select * from purchases_and_tombstones
