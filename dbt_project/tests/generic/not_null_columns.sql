{#
    not_null for several columns of one table in one query: the rows where any of them is null.
#}
{% test not_null_columns(model, columns) %}

    select *

    from {{ model }}
    where
        {%- for column in columns %}
        {{ "or " if not loop.first }}{{ column }} is null
        {%- endfor %}

{% endtest %}
