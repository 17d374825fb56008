{#
    The grain test for composite keys: no two rows share the values of `combination_of_columns`.
    (dbt_utils has one; this project installs no packages, so it works offline.)
#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

    select
        {{ combination_of_columns | join(', ') }},
        count(*) as row_count

    from {{ model }}
    group by {{ combination_of_columns | join(', ') }}
    having count(*) > 1

{% endtest %}
