{#
    A view, like stg_recart__orders. raw_order_lines has no `deleted`: lines leave with their
    order (a deleted order drops its lines downstream, where purchases join them).
#}
with

source as (

    select * from {{ latest_changes(source('recart', 'raw_order_lines'), ['account_id', 'order_id', 'line_id']) }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        cast(order_id as varchar) as order_id,
        cast(line_id as varchar) as line_id,
        cast(product_id as varchar) as product_id,
        ---------- numerics
        quantity,
        unit_price,
        ---------- the change
        _loaded_at as loaded_at,
        ---------- timestamps
        updated_at

    from source

)

select * from renamed
