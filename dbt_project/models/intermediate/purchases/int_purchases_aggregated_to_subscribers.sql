{# Purchases per subscriber: a view of int_purchases_summarised_per_subscriber without its product tags. #}
with

summaries as (

    select * from {{ ref('int_purchases_summarised_per_subscriber') }}

)

select
    account_id,
    subscriber_id,
    first_order_at,
    last_order_at,
    order_count,
    revenue,
    revenue_currency,
    loaded_at

from summaries
