with

source as (

    select * from {{ latest_changes(source('recart', 'raw_products'), ['account_id', 'product_id']) }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        cast(product_id as varchar) as product_id,
        ---------- attributes
        title as product_title,
        tags as product_tags,
        ---------- timestamps
        updated_at

    from source
    where not coalesce(deleted, false)

)

select * from renamed
