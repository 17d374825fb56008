{#
    Recart's raw tables are append-only change data: a later row for a key supersedes an earlier
    one. latest_changes(relation, keys) is that relation reduced to the latest row per key (by
    updated_at, then load order), deleted rows included: callers drop them after choosing, so a
    deletion is never undone by an older row.

    In an incremental model it reads only the keys that have changes loaded since the model's
    watermark (max(loaded_at) of {{ this }}, less var('incremental_lookback_hours') for loads
    that commit late) — and for those keys their whole history, so a late-arriving older row
    never wins over a newer one.
#}
{% macro latest_changes(relation, key_columns) -%}
    {{ return(adapter.dispatch('latest_changes')(relation, key_columns)) }}
{%- endmacro %}

{% macro change_order() -%}
    updated_at desc, _loaded_at desc, _file desc, _row desc
{%- endmacro %}

{% macro changed_keys_filter(relation, key_columns) -%}
    {%- if is_incremental() %}
    where ({{ key_columns | join(', ') }}) in (
        select {{ key_columns | join(', ') }}
        from {{ relation }}
        where _loaded_at >= {{ incremental_watermark() }}
    )
    {%- endif %}
{%- endmacro %}

{% macro default__latest_changes(relation, key_columns) -%}
    (
        select distinct on ({{ key_columns | join(', ') }}) *
        from {{ relation }}
        {{- changed_keys_filter(relation, key_columns) }}
        order by {{ key_columns | join(', ') }}, {{ change_order() }}
    ) as latest_changes
{%- endmacro %}

{#
    DuckDB, building from scratch: most keys have a single change, and ranking every row (a sort
    per key) cost a third of a staging model's time at bench scale, so only the keys changed more
    than once are ranked. An incremental run reads few rows: it ranks them all (reading the raw
    table once).
#}
{% macro duckdb__latest_changes(relation, key_columns) -%}
    {%- set keys = key_columns | join(', ') -%}
    {%- if is_incremental() %}
    (
        select *
        from {{ relation }}
        {{- changed_keys_filter(relation, key_columns) }}
        qualify row_number() over (
            partition by {{ keys }}
            order by {{ change_order() }}
        ) = 1
    ) as latest_changes
    {%- else %}
    (
        with

        changes as not materialized (
            select * from {{ relation }}
        ),

        keys_changed_more_than_once as (
            select {{ keys }}
            from changes
            group by {{ keys }}
            having count(*) > 1
        ),

        changes_of_repeated_keys as (
            select changes.*
            from changes
            inner join keys_changed_more_than_once as repeated
                on {% for key in key_columns %}{{ "and " if not loop.first }}changes.{{ key }} = repeated.{{ key }} {% endfor %}
        )

        select changes.*
        from changes
        left join keys_changed_more_than_once as repeated
            on {% for key in key_columns %}{{ "and " if not loop.first }}changes.{{ key }} = repeated.{{ key }} {% endfor %}
        where repeated.{{ key_columns[0] }} is null

        union all

        select *
        from changes_of_repeated_keys
        qualify row_number() over (
            partition by {{ keys }}
            order by {{ change_order() }}
        ) = 1
    ) as latest_changes
    {%- endif %}
{%- endmacro %}


{#
    Config of a staging model kept as an incremental table of the latest change per key: a run
    replaces the changed keys (delete+insert), and the post-hook removes deleted keys (their
    latest row, is_deleted, arrives like any change and is dropped at once).
#}
{% macro drop_deleted_changes() -%}
    delete from {{ this }} where is_deleted
{%- endmacro %}
