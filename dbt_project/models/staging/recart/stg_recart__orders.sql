{{
  config(
    materialized='incremental',
    unique_key=['account_id', 'order_id'],
    incremental_strategy='delete+insert',
    on_schema_change='fail',
    post_hook="{{ drop_deleted_changes() }}"
  )
}}

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
        coalesce(lower(trim(status)), '') not in ({{ sql_string_list(var('non_purchase_order_statuses')) }})
            as is_purchase,
        ---------- numerics
        total_amount,
        upper(currency) as currency,
        ---------- the change
        coalesce(deleted, false) as is_deleted,
        _loaded_at as loaded_at,
        ---------- timestamps
        placed_at,
        updated_at

    from source

)

select * from renamed
