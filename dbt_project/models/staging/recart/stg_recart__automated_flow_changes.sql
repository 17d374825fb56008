with

source as (

    select * from {{ source('recart', 'raw_automated_flows') }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        cast(flow_id as varchar) as flow_id,
        ---------- the change
        lower(trim(status)) as flow_status,
        coalesce(deleted, false) as is_deleted,
        ---------- timestamps and load order
        updated_at as changed_at,
        _loaded_at as loaded_at,
        _file as source_file,
        _row as source_row

    from source

)

select * from renamed
