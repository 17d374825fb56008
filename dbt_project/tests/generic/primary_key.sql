{#
    The grain test: every row has a value in each key column and no two rows share them (one
    query for what unique_combination_of_columns and a not_null per column would check).

    recent_column (an incremental model's loaded_at): except under --full-refresh, check only the
    rows loaded in the model's last var('data_tests_recent_hours') hours, against all rows with
    the same key, so a daily build does not re-check the whole table (older rows were checked when
    they were written; delete+insert replaces a key's rows whole).
#}
{% test primary_key(model, columns, recent_column=none) %}

    {%- set key = columns | join(', ') %}

    select
        {{ key }},
        count(*) as row_count

    from {{ model }}
    {%- if recent_column and not flags.FULL_REFRESH %}
    where
        {{ recent_column }} >= {{ recent_rows_start(model, recent_column) }}
        or ({{ key }}) in (
            select {{ key }}
            from {{ model }}
            where {{ recent_column }} >= {{ recent_rows_start(model, recent_column) }}
        )
    {%- endif %}
    group by {{ key }}
    having
        count(*) > 1
        {%- for column in columns %}
        or {{ column }} is null
        {%- endfor %}

{% endtest %}
