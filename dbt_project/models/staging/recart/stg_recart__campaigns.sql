with

source as (

    select * from {{ latest_changes(source('recart', 'raw_campaigns'), ['account_id', 'campaign_id']) }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        cast(campaign_id as varchar) as campaign_id,
        ---------- attributes
        name as campaign_name,
        lower(trim(status)) as campaign_status,
        ---------- timestamps
        scheduled_at,
        updated_at

    from source
    where not coalesce(deleted, false)

)

select * from renamed
