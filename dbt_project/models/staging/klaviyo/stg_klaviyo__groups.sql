with

source as (

    select * from {{ source('klaviyo', 'raw_groups') }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        cast(group_id as varchar) as group_id,
        group_kind,
        ---------- attributes
        name as group_name,
        opt_in_process,
        is_active,
        profile_count as klaviyo_profile_count,
        ---------- timestamps
        created_at,
        updated_at,
        synced_at

    from source

)

select * from renamed
