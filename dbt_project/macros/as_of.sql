{#
    "Now" for a run: var('as_of') when given (tests, backfills, "as it was on day X"), else the
    time the run started — one value for every model of a run, unlike current_timestamp.
#}
{% macro as_of_timestamp() -%}
    {%- set as_of = var('as_of', none) -%}
    {%- if as_of -%}
        cast('{{ as_of }}' as timestamp with time zone)
    {%- else -%}
        cast('{{ run_started_at.isoformat() }}' as timestamp with time zone)
    {%- endif -%}
{%- endmacro %}


{% macro days_before_as_of(days) -%}
    {{ dbt.dateadd('day', -1 * (days | int), as_of_timestamp()) }}
{%- endmacro %}
