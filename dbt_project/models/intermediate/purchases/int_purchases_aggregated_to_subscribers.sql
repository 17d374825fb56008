{{
  config(
    materialized='incremental',
    unique_key=['account_id', 'subscriber_id'],
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
    post_hook="{{ drop_tombstones('order_count = 0') }}"
  )
}}

{#
    Incremental: a run re-aggregates only the subscribers whose purchases may have changed since
    the watermark (purchase_affected_subscribers), from the raw changes of their orders (a full
    build: of every order); one left with none is a tombstone (order_count 0).
#}

-- Read by the incremental branch only (dbt learns dependencies while parsing, not incremental):
-- depends_on: {{ source('recart', 'raw_subscribers') }}
with

{% if is_incremental() %}

affected_subscribers as (

    {{ purchase_affected_subscribers(incremental_watermark()) }}

),

orders_of_affected_subscribers as (

    {{ orders_of_subscribers('affected_subscribers') }}

),

purchases as (

    select *
    from (
        {{ matched_purchases(order_keys='select account_id, order_id from orders_of_affected_subscribers') }}
    ) as matched
    where (account_id, subscriber_id) in (
        select
            affected_subscribers.account_id,
            affected_subscribers.subscriber_id
        from affected_subscribers
    )

),

{% else %}

purchases as (

    {{ matched_purchases() }}

),

{% endif %}

purchases_per_subscriber as (

    select
        account_id,
        subscriber_id,
        min(placed_at) as first_order_at,
        max(placed_at) as last_order_at,
        count(*) as order_count,
        sum(total_amount) as revenue,
        case when count(distinct currency) = 1 then min(currency) end as revenue_currency,
        max(loaded_at) as loaded_at

    from purchases
    group by account_id, subscriber_id

),

{% if is_incremental() %}

tombstones as (

    select
        affected_subscribers.account_id,
        affected_subscribers.subscriber_id,
        cast(null as timestamp with time zone) as first_order_at,
        cast(null as timestamp with time zone) as last_order_at,
        0 as order_count,
        cast(null as decimal(38, 2)) as revenue,
        cast(null as varchar) as revenue_currency,
        cast(null as timestamp with time zone) as loaded_at

    from affected_subscribers
    left join purchases_per_subscriber
        on
            affected_subscribers.account_id = purchases_per_subscriber.account_id
            and affected_subscribers.subscriber_id = purchases_per_subscriber.subscriber_id
    where purchases_per_subscriber.subscriber_id is null

),

{% endif %}

purchases_and_tombstones as (

    select * from purchases_per_subscriber
    {% if is_incremental() %}
    union all
    select * from tombstones
    {% endif %}

)

select * from purchases_and_tombstones
