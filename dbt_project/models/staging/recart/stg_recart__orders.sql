{#
    A view: the 10M-order table would cost more to write than every reader of it saves. The
    purchase marts read the raw changes of the orders they need (matched_purchases).
#}
with

source as (

    select * from {{ latest_changes(source('recart', 'raw_orders'), ['account_id', 'order_id']) }}

),

renamed as (

    select
        ---------- ids
        cast(account_id as varchar) as account_id,
        cast(order_id as varchar) as order_id,
        cast(subscriber_id as varchar) as subscriber_id,
        {{ normalize_email('email') }} as email,
        ---------- order
        lower(trim(status)) as order_status,
        {{ is_purchase_status('status') }} as is_purchase,
        ---------- numerics
        total_amount,
        upper(currency) as currency,
        ---------- the change
        _loaded_at as loaded_at,
        ---------- timestamps
        placed_at,
        updated_at

    from source
    where not coalesce(deleted, false)

)

select * from renamed
