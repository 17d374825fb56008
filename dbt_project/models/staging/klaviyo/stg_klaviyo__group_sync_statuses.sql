with

source as (

    select * from {{ source('klaviyo', 'group_sync_status') }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        cast(group_id as varchar) as group_id,
        group_kind,
        ---------- counts of the last sync
        member_count,
        klaviyo_profile_count,
        joins,
        leaves,
        ---------- timestamps
        last_synced_at,
        joined_watermark,
        last_full_sweep_at

    from source

)

select * from renamed
