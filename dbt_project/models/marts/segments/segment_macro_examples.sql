{{ config(materialized='view') }}

{#
    Every segment-builder condition evaluated for every subscriber, one column each: the living
    reference of what the macros mean (its unit test pins them down). Nothing reads this view;
    query it to see why a subscriber is or is not in a segment.
#}
with

subscribers as (

    select * from {{ ref('subscribers') }}

),

conditions as (

    select
        account_id,
        subscriber_id,
        {{ in_klaviyo_segment('Engaged 30 days') }} as is_in_engaged_30_days,
        {{ not_in_klaviyo_segment('Engaged 30 days') }} as is_not_in_engaged_30_days,
        {{ in_klaviyo_list('Newsletter') }} as is_in_newsletter,
        {{ not_in_klaviyo_list('Newsletter') }} as is_not_in_newsletter,
        {{ not_purchased_since_joining_klaviyo_segment('Abandoned cart 7 days') }}
            as is_abandoned_cart_without_purchase,
        {{ not_purchased_since_joining_klaviyo_list('Newsletter') }} as is_newsletter_without_purchase,
        {{ purchased_within_days(30) }} as has_purchased_within_30_days,
        {{ not_purchased_within_days(30) }} as has_not_purchased_within_30_days,
        {{ purchased_since('2026-01-01') }} as has_purchased_since_2026,
        {{ not_purchased_since('2026-01-01') }} as has_not_purchased_since_2026,
        {{ bought_product_tagged('Hiking') }} as has_bought_hiking,
        {{ bought_product_tagged('hiking', within_days=30) }} as has_bought_hiking_within_30_days,
        {{ not_bought_product_tagged('hiking') }} as has_not_bought_hiking,
        {{ custom_attribute('vip') }} = true as is_vip,
        {{ custom_attribute('tier') }} = 'gold' as is_gold_tier,
        {{ custom_attribute('points', 'integer') }} > 100 as has_over_100_points,
        {{ has_custom_attribute('vip') }} as has_vip_attribute

    from subscribers

)

select * from conditions
