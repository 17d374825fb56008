{{
  config(
    materialized='incremental',
    unique_key=['account_id', 'subscriber_id'],
    incremental_strategy='delete+insert',
    on_schema_change='append_new_columns',
    post_hook="{{ drop_tombstones('product_tag is null') }}"
  )
}}

{#
    Incremental: a run rebuilds all tag rows of the subscribers whose purchases may have changed
    since the watermark (purchase_affected_subscribers), who own orders with changed lines, or who
    bought a product whose tags changed — from the raw changes of their orders and lines (a full
    build: of all of them); one left with no tags is a tombstone (product_tag null).
#}

-- Read by the incremental branch only (dbt learns dependencies while parsing, not incremental):
-- depends_on: {{ source('recart', 'raw_subscribers') }}
-- depends_on: {{ source('recart', 'raw_products') }}
with

product_tags as (

    select * from {{ ref('int_product_tags_unnested') }}

),

{% if is_incremental() %}

orders_with_changed_lines as (

    select
        account_id,
        order_id
    from {{ source('recart', 'raw_order_lines') }}
    where _loaded_at >= {{ incremental_watermark() }}

    union

    -- orders with a product whose tags changed
    select
        account_id,
        order_id
    from {{ source('recart', 'raw_order_lines') }}
    where (account_id, product_id) in (
        select
            account_id,
            product_id
        from {{ source('recart', 'raw_products') }}
        where _loaded_at >= {{ incremental_watermark() }}
    )

),

affected_subscribers as (

    {{ purchase_affected_subscribers(incremental_watermark()) }}

    union

    select
        account_id,
        subscriber_id
    from (
        {{ matched_purchases(order_keys='select account_id, order_id from orders_with_changed_lines') }}
    ) as purchases_with_changed_lines

),

orders_of_affected_subscribers as (

    {{ orders_of_subscribers('affected_subscribers') }}

),

-- materialized: the affected subscribers' purchases and lines are few; read them before joining tags
purchases as materialized (

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

line_changes as (

    select * from {{ source('recart', 'raw_order_lines') }}
    where (account_id, order_id) in (select purchases.account_id, purchases.order_id from purchases)

),

order_lines as materialized (

    select * from {{ latest_of_few_changes('line_changes', ['account_id', 'order_id', 'line_id']) }}

),

{% else %}

purchases as not materialized (

    {{ matched_purchases() }}

),

order_lines as (

    select * from {{ latest_of_all_changes(source('recart', 'raw_order_lines'), ['account_id', 'order_id', 'line_id']) }}

),

{% endif %}

tags_per_order as (

    -- distinct first: an order counts once per tag, however many lines carry it
    select
        order_lines.account_id,
        order_lines.order_id,
        product_tags.product_tag,
        max(order_lines._loaded_at) as loaded_at

    from order_lines
    inner join product_tags
        on
            order_lines.account_id = product_tags.account_id
            and order_lines.product_id = product_tags.product_id
    group by order_lines.account_id, order_lines.order_id, product_tags.product_tag

),

tags_per_subscriber as (

    select
        purchases.account_id,
        purchases.subscriber_id,
        tags_per_order.product_tag,
        min(purchases.placed_at) as first_bought_at,
        max(purchases.placed_at) as last_bought_at,
        count(*) as order_count,
        greatest(max(purchases.loaded_at), max(tags_per_order.loaded_at)) as loaded_at

    from tags_per_order
    inner join purchases
        on
            tags_per_order.account_id = purchases.account_id
            and tags_per_order.order_id = purchases.order_id
    group by purchases.account_id, purchases.subscriber_id, tags_per_order.product_tag

),

{% if is_incremental() %}

tombstones as (

    select
        affected_subscribers.account_id,
        affected_subscribers.subscriber_id,
        cast(null as varchar) as product_tag,
        cast(null as timestamp with time zone) as first_bought_at,
        cast(null as timestamp with time zone) as last_bought_at,
        0 as order_count,
        cast(null as timestamp with time zone) as loaded_at

    from affected_subscribers
    where (affected_subscribers.account_id, affected_subscribers.subscriber_id) not in (
        select
            tags_per_subscriber.account_id,
            tags_per_subscriber.subscriber_id
        from tags_per_subscriber
    )

),

{% endif %}

tags_and_tombstones as (

    select * from tags_per_subscriber
    {% if is_incremental() %}
    union all
    select * from tombstones
    {% endif %}

)

select * from tags_and_tombstones
