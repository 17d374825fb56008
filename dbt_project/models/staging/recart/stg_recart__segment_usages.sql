with

source as (

    select * from {{ latest_changes(
        source('recart', 'raw_segment_usages'),
        ['account_id', 'consumer_type', 'consumer_id', 'segment_name']
    ) }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        lower(trim(consumer_type)) as consumer_type,
        cast(consumer_id as varchar) as consumer_id,
        trim(segment_name) as segment_name,
        ---------- timestamps
        updated_at

    from source
    where not coalesce(deleted, false)

)

select * from renamed
