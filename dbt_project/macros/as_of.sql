{#
    "Now" for a run — one value for every model of the run, unlike current_timestamp:

    1. var('as_of') when given (unit tests, `dbt build --vars '{as_of: ...}'`);
    2. else the environment variable RECART_AS_OF (Dagster's run config `as_of`, backfills, "as it
       was on day X", bench/dbt_build.py): an ISO 8601 time, e.g. 2026-06-01T00:00:00+00:00
       (a time without an offset is UTC);
    3. else the time the run started (run_started_at).

    Why an environment variable and not --vars: dbt hashes the command line's vars into its partial
    parse state, so every new as_of threw the saved parse away (a full re-parse, ~2 s). env_var()
    records a variable (dbt/context/providers.py, ModelContext.env_var) only while a node is being
    parsed, and a saved variable whose value changes schedules the files that used it for
    re-parsing. Read only when `execute` is true, RECART_AS_OF never reaches the saved parse state,
    so a new value costs nothing.
#}
{% macro as_of_timestamp() -%}
    {%- set as_of = var('as_of', none) -%}
    {%- if not as_of and execute -%}
        {%- set as_of = recart_as_of_from_env() -%}
    {%- endif -%}
    {%- if as_of -%}
        cast('{{ as_of }}' as timestamp with time zone)
    {%- else -%}
        cast('{{ run_started_at.isoformat() }}' as timestamp with time zone)
    {%- endif -%}
{%- endmacro %}


{# RECART_AS_OF, checked (none when unset or empty). Call it only when `execute` is true. #}
{% macro recart_as_of_from_env() -%}
    {%- set value = env_var('RECART_AS_OF', '') | trim -%}
    {%- if not value -%}
        {{ return(none) }}
    {%- endif -%}
    {#- date, then optionally [T ]hh:mm[:ss[.ffffff]] and an offset (Z, +hh, +hhmm, +hh:mm) -#}
    {%- set iso = modules.re.fullmatch(
        '([0-9]{4})-([0-9]{2})-([0-9]{2})'
        ~ '([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9]([.][0-9]{1,6})?)?'
        ~ '(Z|[+-]([01][0-9]|2[0-3])(:?[0-5][0-9])?)?)?',
        value
    ) -%}
    {%- set month = (iso.group(2) | int) if iso else 0 -%}
    {%- set day = (iso.group(3) | int) if iso else 0 -%}
    {%- if not (1 <= month <= 12 and 1 <= day <= 31 and (iso.group(1) | int) >= 1)
        or (modules.datetime.date(iso.group(1) | int, month, 1)
            + modules.datetime.timedelta(days=day - 1)).month != month -%}
        {{ exceptions.raise_compiler_error(
            "RECART_AS_OF must be an ISO 8601 time such as 2026-06-01T00:00:00+00:00, not '"
            ~ value ~ "'"
        ) }}
    {%- endif -%}
    {{ return(value) }}
{%- endmacro %}


{% macro days_before_as_of(days) -%}
    {{ dbt.dateadd('day', -1 * (days | int), as_of_timestamp()) }}
{%- endmacro %}
