{#
    Incremental models downstream of staging (purchase summaries) rebuild only the rows of
    the subscribers a run's new changes can affect, and replace those rows whole (delete+insert
    on the subscriber). Each such model keeps `loaded_at`, the latest load behind a row; its
    watermark is the model's max(loaded_at) less var('incremental_lookback_hours'), as in
    staging (latest_changes). A subscriber left with nothing comes out as a tombstone row, which
    replaces its old rows and is deleted by the model's post-hook (drop_tombstones).
#}

{# The watermark of {{ this }}: changes loaded at or after it are (re)read. #}
{% macro incremental_watermark(column='loaded_at') -%}
    (
        select
            coalesce(
                {{ dbt.dateadd('hour', -1 * var('incremental_lookback_hours'), 'max(' ~ column ~ ')') }},
                cast('1970-01-01 00:00:00+00' as timestamp with time zone)
            )
        from {{ this }}
    )
{%- endmacro %}


{# Every version (account_id, subscriber_id, normalised email) of the subscribers with changes loaded since `watermark`. #}
{% macro subscriber_versions_changed_since(watermark) -%}
    select
        account_id,
        subscriber_id,
        {{ normalize_email('email') }} as email
    from {{ source('recart', 'raw_subscribers') }}
    where (account_id, subscriber_id) in (
        select
            account_id,
            subscriber_id
        from {{ source('recart', 'raw_subscribers') }}
        where _loaded_at >= {{ watermark }}
    )
{%- endmacro %}


{# Every version (account_id, order_id, subscriber_id, normalised email) of the orders `order_keys` (SQL selecting account_id, order_id) names. #}
{% macro order_versions(order_keys) -%}
    select
        account_id,
        order_id,
        cast(subscriber_id as varchar) as subscriber_id,
        {{ normalize_email('email') }} as email
    from {{ source('recart', 'raw_orders') }}
    where (account_id, order_id) in ({{ order_keys }})
{%- endmacro %}


{#
    The subscribers whose purchases (matched_purchases) may have changed since `watermark`, old
    attribution and new: the changed subscribers themselves, every subscriber id any version of a
    changed order names, and every current subscriber sharing an email with any version of a
    changed subscriber or order (the owner of a guest order's email can change hands).
    changed_order_keys: SQL selecting the (account_id, order_id) of the changed orders.
#}
{% macro purchase_affected_subscribers(watermark, changed_order_keys) -%}
    with

    changed_subscribers as (
        {{ subscriber_versions_changed_since(watermark) }}
    ),

    changed_orders as (
        {{ order_versions(changed_order_keys) }}
    ),

    touched_emails as (
        select
            account_id,
            email
        from changed_subscribers
        where email is not null
        union
        select
            account_id,
            email
        from changed_orders
        where email is not null
    )

    select
        account_id,
        subscriber_id
    from changed_subscribers
    union
    select
        account_id,
        subscriber_id
    from changed_orders
    where subscriber_id is not null
    union
    select
        account_id,
        subscriber_id
    from {{ ref('stg_recart__subscribers') }}
    where (account_id, email) in (select touched_emails.account_id, touched_emails.email from touched_emails)
{%- endmacro %}


{# Post-hook of these models: remove the tombstones (rows where `condition` holds). #}
{% macro drop_tombstones(condition) -%}
    delete from {{ this }} where {{ condition }}
{%- endmacro %}


{#
    Where tests of an incremental model start reading when they check recent rows only (see
    primary_key): var('data_tests_recent_hours') before the newest load.
#}
{% macro recent_rows_start(relation, column) -%}
    (
        select {{ dbt.dateadd('hour', -1 * var('data_tests_recent_hours'), 'max(' ~ column ~ ')') }}
        from {{ relation }}
    )
{%- endmacro %}
