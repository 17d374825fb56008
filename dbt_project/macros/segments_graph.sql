{#
    Analyst segments are the models under models/segments/. These macros find them through the
    graph (graph.nodes), so adding one file is enough: segment_members, segments and
    segment_klaviyo_references pick it up on the next run.
#}

{# The segment models (nodes), by name. Empty while parsing: the graph exists at run time only. #}
{% macro segment_nodes() -%}
    {%- set found = [] -%}
    {%- if execute -%}
        {%- for node in graph.nodes.values() -%}
            {%- if node.resource_type == 'model' and node.package_name == project_name
                and node.fqn | length > 2 and node.fqn[1] == 'segments' -%}
                {%- do found.append(node) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
    {{ return(found | sort(attribute='name')) }}
{%- endmacro %}


{#
    The Klaviyo groups a piece of segment code names: (group_kind, name_or_id) of every
    *klaviyo_segment('...') / *klaviyo_list('...') call with a literal first argument.
#}
{% macro klaviyo_references_in_code(code) -%}
    {%- set re = modules.re -%}
    {%- set without_comments = re.sub('(?s){#.*?#}', '', code) -%}
    {%- set found = [] -%}
    {%- for expression in re.findall('(?s){{(.*?)}}', without_comments) -%}
        {%- for match in re.findall('\\b\\w*klaviyo_(segment|list)\\s*\\(\\s*([\'"])(.*?)\\2', expression) -%}
            {%- if (match[0], match[2]) not in found -%}
                {%- do found.append((match[0], match[2])) -%}
            {%- endif -%}
        {%- endfor -%}
    {%- endfor -%}
    {{ return(found) }}
{%- endmacro %}


{# Rows (segment_name, group_kind, referenced_as) for every Klaviyo reference of every segment. #}
{% macro klaviyo_references_in_segments() -%}
    {%- set rows = [] -%}
    {%- for node in segment_nodes() -%}
        {%- for reference in klaviyo_references_in_code(node.raw_code) -%}
            {%- do rows.append([node.name, reference[0], reference[1]]) -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- if rows %}
    select
        references_in_code.segment_name,
        references_in_code.group_kind,
        references_in_code.referenced_as
    from (
        values
        {%- for row in rows %}
            ({{ sql_string(row[0]) }}, {{ sql_string(row[1]) }}, {{ sql_string(row[2]) }})
            {{- "," if not loop.last }}
        {%- endfor %}
    ) as references_in_code (segment_name, group_kind, referenced_as)
    {%- else %}
    select
        cast(null as {{ dbt.type_string() }}) as segment_name,
        cast(null as {{ dbt.type_string() }}) as group_kind,
        cast(null as {{ dbt.type_string() }}) as referenced_as
    where false
    {%- endif %}
{%- endmacro %}


{# Rows (segment_name, description, file_path) of the segment catalog. #}
{% macro segment_catalog_rows() -%}
    {%- set nodes = segment_nodes() -%}
    {%- if nodes %}
    select
        catalog.segment_name,
        catalog.description,
        catalog.file_path
    from (
        values
        {%- for node in nodes %}
            ({{ sql_string(node.name) }}, {{ sql_string(node.description or '') }}, {{ sql_string(node.original_file_path) }})
            {{- "," if not loop.last }}
        {%- endfor %}
    ) as catalog (segment_name, description, file_path)
    {%- else %}
    select
        cast(null as {{ dbt.type_string() }}) as segment_name,
        cast(null as {{ dbt.type_string() }}) as description,
        cast(null as {{ dbt.type_string() }}) as file_path
    where false
    {%- endif %}
{%- endmacro %}


{#
    (segment_name, account_id, subscriber_id) of every segment, each segment's code inlined as a
    subquery (rendered from graph.nodes, so a segment edited since its view was built counts as
    written now). A segment may ref only what the calling model declares (its `-- depends_on:`
    lines): dbt orders models by declared refs, and the graph is not known while parsing.
#}
{% macro collect_segment_members() -%}
    {%- set nodes = segment_nodes() -%}
    {%- for node in nodes -%}
        {%- for parent in node.depends_on.nodes -%}
            {%- if parent not in model.depends_on.nodes -%}
                {{ exceptions.raise_compiler_error(
                    "Segment " ~ node.name ~ " depends on " ~ parent ~ ", which " ~ model.name
                    ~ " does not declare. Segments select from ref('subscribers') with the segment"
                    ~ " macros; to use another model, add `-- depends_on: {{ ref('...') }}` to "
                    ~ model.original_file_path ~ "."
                ) }}
            {%- endif -%}
        {%- endfor -%}
    {%- endfor -%}
    {%- if nodes -%}
        {%- for node in nodes %}
    select
        {{ sql_string(node.name) }} as segment_name,
        segment.account_id,
        segment.subscriber_id
    from (
        {{ render(node.raw_code) | trim | trim(';') }}
    ) as segment
    {{ "union" if not loop.last }}
        {%- endfor %}
    {%- else %}
    select
        cast(null as {{ dbt.type_string() }}) as segment_name,
        cast(null as {{ dbt.type_string() }}) as account_id,
        cast(null as {{ dbt.type_string() }}) as subscriber_id
    where false
    {%- endif %}
{%- endmacro %}
