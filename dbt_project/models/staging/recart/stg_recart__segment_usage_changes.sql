with

source as (

    select * from {{ source('recart', 'raw_segment_usages') }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        lower(trim(consumer_type)) as consumer_type,
        cast(consumer_id as varchar) as consumer_id,
        trim(segment_name) as segment_name,
        ---------- the change
        coalesce(deleted, false) as is_deleted,
        ---------- timestamps and load order
        updated_at as changed_at,
        _loaded_at as loaded_at,
        _file as source_file,
        _row as source_row

    from source

)

select * from renamed
