{#
    Recart's raw tables are append-only change data: a later row for a key supersedes an earlier
    one. latest_changes(relation, keys) is that relation reduced to the latest row per key (by
    updated_at, then load order), deleted rows included: callers drop them after choosing, so a
    deletion is never undone by an older row.

    In an incremental model it reads only the keys that have changes loaded since the model's
    watermark (max(loaded_at) of {{ this }}, less var('incremental_lookback_hours') for clock
    steps and hand-written loads; the loader stamps rows under the lock a build holds) — and for
    those keys their whole history, so a late-arriving older row never wins over a newer one.
#}
{% macro latest_changes(relation, key_columns) -%}
    {%- if is_incremental() -%}
    {%- set keys = key_columns | join(', ') -%}
    {%- set changes_since_watermark -%}
    (
        select *
        from {{ relation }}
        where ({{ keys }}) in (
            select {{ keys }}
            from {{ relation }}
            where _loaded_at >= {{ incremental_watermark() }}
        )
    ) as changes_since_watermark
    {%- endset -%}
    {{ latest_of_few_changes(changes_since_watermark, key_columns) }}
    {%- else -%}
    {{ latest_of_all_changes(relation, key_columns) }}
    {%- endif %}
{%- endmacro %}

{% macro change_order() -%}
    updated_at desc, _loaded_at desc, _file desc, _row desc
{%- endmacro %}

{#
    latest_of_few_changes(relation, keys): the latest row per key of `relation` (a table or a CTE
    of change rows already narrowed to the keys of interest, with their whole history), ranking
    every row. For a few keys: an incremental run, or the orders of a few subscribers.
#}
{% macro latest_of_few_changes(relation, key_columns) -%}
    {{ return(adapter.dispatch('latest_of_few_changes')(relation, key_columns)) }}
{%- endmacro %}

{% macro default__latest_of_few_changes(relation, key_columns) -%}
    (
        select distinct on ({{ key_columns | join(', ') }}) *
        from {{ relation }}
        order by {{ key_columns | join(', ') }}, {{ change_order() }}
    ) as latest_changes
{%- endmacro %}

{% macro duckdb__latest_of_few_changes(relation, key_columns) -%}
    (
        select *
        from {{ relation }}
        qualify row_number() over (
            partition by {{ key_columns | join(', ') }}
            order by {{ change_order() }}
        ) = 1
    ) as latest_changes
{%- endmacro %}


{#
    latest_of_all_changes(relation, keys): the same over a whole change table, built from scratch.
#}
{% macro latest_of_all_changes(relation, key_columns) -%}
    {{ return(adapter.dispatch('latest_of_all_changes')(relation, key_columns)) }}
{%- endmacro %}

{% macro default__latest_of_all_changes(relation, key_columns) -%}
    {{ default__latest_of_few_changes(relation, key_columns) }}
{%- endmacro %}

{#
    DuckDB: most keys have a single change, and ranking every row (a sort per key) cost a third
    of a staging model's time at bench scale, so only the keys changed more than once are ranked.
    Repeated keys are found by a hash of the key (grouping 12M rows on one integer instead of
    three strings took 30 % less): two keys that collide are merely both ranked, still exactly.
#}
{% macro duckdb__latest_of_all_changes(relation, key_columns) -%}
    {%- set keys = key_columns | join(', ') -%}
    (
        with

        changes as not materialized (
            select * from {{ relation }}
        ),

        keys_changed_more_than_once as (
            select hash({{ keys }}) as key_hash
            from changes
            group by key_hash
            having count(*) > 1
        )

        select *
        from changes
        where hash({{ keys }}) not in (select key_hash from keys_changed_more_than_once)

        union all

        select *
        from changes
        where hash({{ keys }}) in (select key_hash from keys_changed_more_than_once)
        qualify row_number() over (
            partition by {{ keys }}
            order by {{ change_order() }}
        ) = 1
    ) as latest_changes
{%- endmacro %}


{#
    Config of a staging model kept as an incremental table of the latest change per key: a run
    replaces the changed keys (delete+insert), and the post-hook removes deleted keys (their
    latest row, is_deleted, arrives like any change and is dropped at once).
#}
{% macro drop_deleted_changes() -%}
    delete from {{ this }} where is_deleted
{%- endmacro %}
