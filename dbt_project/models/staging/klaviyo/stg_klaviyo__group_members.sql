with

source as (

    select * from {{ source('klaviyo', 'raw_group_members') }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        group_kind,
        cast(group_id as varchar) as group_id,
        cast(profile_id as varchar) as profile_id,
        nullif(trim(external_id), '') as external_id,
        ---------- contact points: Klaviyo keeps valid emails and E.164 phones; same case rules as Recart's
        {{ normalize_email('email', validate=false) }} as email,
        nullif(trim(phone_number), '') as phone_number,
        ---------- the membership spell
        joined_group_at,
        valid_from,
        valid_to,
        valid_to is null as is_current,
        left_detected_at,
        loaded_at

    from source

)

select * from renamed
