with

purchases as (

    select * from {{ ref('int_orders_matched_to_subscribers') }}

),

order_lines as (

    select * from {{ ref('stg_recart__order_lines') }}

),

product_tags as (

    select * from {{ ref('int_product_tags_unnested') }}

),

tags_per_order as (

    -- distinct first: an order counts once per tag, however many lines carry it
    select distinct
        order_lines.account_id,
        order_lines.order_id,
        product_tags.product_tag

    from order_lines
    inner join product_tags
        on
            order_lines.account_id = product_tags.account_id
            and order_lines.product_id = product_tags.product_id

),

tags_per_subscriber as (

    select
        purchases.account_id,
        purchases.subscriber_id,
        tags_per_order.product_tag,
        min(purchases.placed_at) as first_bought_at,
        max(purchases.placed_at) as last_bought_at,
        count(*) as order_count

    from tags_per_order
    inner join purchases
        on
            tags_per_order.account_id = purchases.account_id
            and tags_per_order.order_id = purchases.order_id
    group by purchases.account_id, purchases.subscriber_id, tags_per_order.product_tag

)

select * from tags_per_subscriber
