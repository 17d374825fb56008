{{
  config(
    materialized='incremental',
    unique_key=['account_id', 'subscriber_id'],
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    post_hook="{{ drop_deleted_changes() }}"
  )
}}

with

source as (

    select * from {{ latest_changes(source('recart', 'raw_subscribers'), ['account_id', 'subscriber_id']) }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        cast(subscriber_id as varchar) as subscriber_id,
        nullif(trim(external_id), '') as external_id,
        ---------- contact points, normalised once, here
        {{ normalize_email('email') }} as email,
        {{ normalize_phone('phone', default_phone_country('account_id')) }} as phone_number,
        nullif(trim(email), '') as email_as_given,
        nullif(trim(phone), '') as phone_as_given,
        {{ default_phone_country('account_id') }} as phone_default_country,
        ---------- consent
        coalesce(email_consent, false) as has_email_consent,
        email_consent_at,
        coalesce(sms_consent, false) as has_sms_consent,
        sms_consent_at,
        email_opted_out_at,
        sms_opted_out_at,
        ---------- attributes
        custom_attributes,
        source as signup_source,
        ---------- the change
        coalesce(deleted, false) as is_deleted,
        _loaded_at as loaded_at,
        ---------- timestamps
        created_at,
        updated_at

    from source

)

select * from renamed
