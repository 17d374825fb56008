{#
    Layers land in schemas named as they are (staging, intermediate, marts, segments) beside the
    raw schemas (recart, klaviyo), not in dbt's default "<target schema>_<custom schema>".
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
