-- VIP subscribers (custom attribute vip) who bought a product tagged "hiking".
select
    account_id,
    subscriber_id

from {{ ref('subscribers') }}
where
    {{ custom_attribute('vip') }} = true
    and {{ bought_product_tagged('hiking') }}
