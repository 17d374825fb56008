{{ config(materialized='view') }}

{# The product tags each subscriber bought: a view unnesting int_purchases_summarised_per_subscriber's product_tags. #}
with

summaries as (

    select * from {{ ref('int_purchases_summarised_per_subscriber') }}

),

tags_unnested as (

    select
        account_id,
        subscriber_id,
        unnest(product_tags) as tag,
        loaded_at

    from summaries

)

select
    account_id,
    subscriber_id,
    struct_extract(tag, 'product_tag') as product_tag,
    struct_extract(tag, 'first_bought_at') as first_bought_at,
    struct_extract(tag, 'last_bought_at') as last_bought_at,
    struct_extract(tag, 'order_count') as order_count,
    loaded_at

from tags_unnested
