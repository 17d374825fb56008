{{ config(materialized='table') }}

with

purchases as (

    select * from {{ ref('int_orders_matched_to_subscribers') }}

),

purchases_per_subscriber as (

    select
        account_id,
        subscriber_id,
        min(placed_at) as first_order_at,
        max(placed_at) as last_order_at,
        count(*) as order_count,
        sum(total_amount) as revenue,
        case when count(distinct currency) = 1 then min(currency) end as revenue_currency

    from purchases
    group by account_id, subscriber_id

)

select * from purchases_per_subscriber
