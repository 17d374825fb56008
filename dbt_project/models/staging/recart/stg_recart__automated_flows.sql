with

source as (

    select * from {{ latest_changes(source('recart', 'raw_automated_flows'), ['account_id', 'flow_id']) }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        cast(flow_id as varchar) as flow_id,
        ---------- attributes
        name as flow_name,
        lower(trim(status)) as flow_status,
        trigger as flow_trigger,
        ---------- timestamps
        updated_at

    from source
    where not coalesce(deleted, false)

)

select * from renamed
