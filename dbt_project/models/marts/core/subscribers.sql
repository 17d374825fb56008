{#
    The base relation of analyst segments: one row per current Recart subscriber with what the
    segment macros read (purchases, custom attributes) and how it maps to Klaviyo.
#}
with

subscribers as (

    select * from {{ ref('stg_recart__subscribers') }}

),

purchases as (

    select * from {{ ref('int_purchases_summarised_per_subscriber') }}

),

matches as (

    select * from {{ ref('int_subscribers_matched_to_klaviyo_profiles') }}

),

profiles_per_subscriber as (

    select
        account_id,
        subscriber_id,
        count(*) as klaviyo_profile_count

    from matches
    group by account_id, subscriber_id

),

subscribers_enriched as (

    select
        subscribers.account_id,
        subscribers.subscriber_id,
        subscribers.external_id,
        subscribers.email,
        subscribers.phone_number,
        subscribers.has_email_consent,
        subscribers.email_consent_at,
        subscribers.has_sms_consent,
        subscribers.sms_consent_at,
        subscribers.email_opted_out_at,
        subscribers.sms_opted_out_at,
        subscribers.custom_attributes,
        subscribers.signup_source,
        subscribers.created_at,
        subscribers.updated_at,
        purchases.first_order_at,
        purchases.last_order_at,
        coalesce(purchases.order_count, 0) as order_count,
        coalesce(purchases.revenue, 0) as revenue,
        purchases.revenue_currency,
        purchases.product_tags_bought,
        coalesce(profiles_per_subscriber.klaviyo_profile_count, 0) as klaviyo_profile_count

    from subscribers
    left join purchases
        on
            subscribers.account_id = purchases.account_id
            and subscribers.subscriber_id = purchases.subscriber_id
    left join profiles_per_subscriber
        on
            subscribers.account_id = profiles_per_subscriber.account_id
            and subscribers.subscriber_id = profiles_per_subscriber.subscriber_id

)

select * from subscribers_enriched
