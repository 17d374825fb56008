{#
    The segment builder: conditions an analyst writes in the WHERE clause of a segment model
    (models/segments/<segment_name>.sql) that selects from ref('subscribers'):

        select account_id, subscriber_id
        from {{ ref('subscribers') }}
        where {{ in_klaviyo_segment('Engaged 30 days') }}
          and {{ not_purchased_within_days(30) }}

    Contract: every condition reads the columns of `subscribers` (account_id, subscriber_id,
    last_order_at, custom_attributes, ...) unqualified, so select from `subscribers` alone (no
    joins that bring columns of the same names). Klaviyo conditions take the group's name (case
    insensitive) or its id as a literal string: segment_klaviyo_references reads them from the
    model's code to know which groups a segment needs.
#}

{# ---------------------------------------------------------------- Klaviyo segments and lists #}

{% macro in_klaviyo_segment(name_or_id) -%}
    {{ klaviyo_membership_condition('segment', name_or_id) }}
{%- endmacro %}

{% macro not_in_klaviyo_segment(name_or_id) -%}
    not {{ klaviyo_membership_condition('segment', name_or_id) }}
{%- endmacro %}

{% macro in_klaviyo_list(name_or_id) -%}
    {{ klaviyo_membership_condition('list', name_or_id) }}
{%- endmacro %}

{% macro not_in_klaviyo_list(name_or_id) -%}
    not {{ klaviyo_membership_condition('list', name_or_id) }}
{%- endmacro %}

{# Member of the segment, and no Recart purchase since (most recently) joining it. #}
{% macro not_purchased_since_joining_klaviyo_segment(name_or_id) -%}
    {{ klaviyo_membership_condition('segment', name_or_id, 'not memberships.has_purchased_since_joining') }}
{%- endmacro %}

{% macro not_purchased_since_joining_klaviyo_list(name_or_id) -%}
    {{ klaviyo_membership_condition('list', name_or_id, 'not memberships.has_purchased_since_joining') }}
{%- endmacro %}


{#
    The rule that resolves an analyst's 'name or id' to a group: the id, or the name case
    insensitively. `name_or_id_sql` is SQL (a quoted literal or a column); segment_klaviyo_references
    uses the same rule.
#}
{% macro klaviyo_group_matches(group_id_column, group_name_column, name_or_id_sql) -%}
    (
        {{ group_id_column }} = {{ name_or_id_sql }}
        or lower({{ group_name_column }}) = lower({{ name_or_id_sql }})
    )
{%- endmacro %}


{% macro klaviyo_membership_condition(group_kind, name_or_id, extra_condition=none) -%}
    {%- do check_literal_klaviyo_reference(group_kind, name_or_id) -%}
    (account_id, subscriber_id) in (
        select
            memberships.account_id,
            memberships.subscriber_id
        from {{ ref('subscriber_klaviyo_memberships') }} as memberships
        where
            memberships.group_kind = '{{ group_kind }}'
            and {{ klaviyo_group_matches('memberships.group_id', 'memberships.group_name', sql_string(name_or_id)) }}
            {%- if extra_condition %}
            and {{ extra_condition }}
            {%- endif %}
    )
{%- endmacro %}


{#
    In a segment model, a Klaviyo name or id must be a literal in the code (not a variable), or
    segment_klaviyo_references (and with it klaviyo_as_of and outdated detection) would miss it.
#}
{% macro check_literal_klaviyo_reference(group_kind, name_or_id) -%}
    {%- if execute and model is mapping and model.get('resource_type') == 'model'
        and (model.get('fqn') or [none, none])[1] == 'segments' -%}
        {%- set found = klaviyo_references_in_code(model.raw_code) -%}
        {%- if (group_kind, name_or_id) not in found -%}
            {{ exceptions.raise_compiler_error(
                "Segment " ~ model.name ~ ": write the Klaviyo " ~ group_kind ~ " as a literal string, e.g. "
                ~ "in_klaviyo_" ~ group_kind ~ "('" ~ name_or_id ~ "'), so segment_klaviyo_references can see it."
            ) }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}


{# ---------------------------------------------------------------- purchases (Recart orders) #}

{% macro purchased_within_days(days) -%}
    (last_order_at >= {{ days_before_as_of(days) }})
{%- endmacro %}

{% macro not_purchased_within_days(days) -%}
    (last_order_at is null or last_order_at < {{ days_before_as_of(days) }})
{%- endmacro %}

{# purchased_since('2026-01-01'): a purchase at or after that time (UTC). #}
{% macro purchased_since(timestamp) -%}
    (last_order_at >= cast({{ sql_string(timestamp) }} as timestamp with time zone))
{%- endmacro %}

{% macro not_purchased_since(timestamp) -%}
    (last_order_at is null or last_order_at < cast({{ sql_string(timestamp) }} as timestamp with time zone))
{%- endmacro %}

{# bought_product_tagged('hiking'[, within_days=90]): bought a product with that tag (case insensitive). #}
{% macro bought_product_tagged(tag, within_days=none) -%}
    (account_id, subscriber_id) in (
        select
            product_tags.account_id,
            product_tags.subscriber_id
        from {{ ref('subscriber_product_tags') }} as product_tags
        where
            product_tags.product_tag = lower(trim({{ sql_string(tag) }}))
            {%- if within_days is not none %}
            and product_tags.last_bought_at >= {{ days_before_as_of(within_days) }}
            {%- endif %}
    )
{%- endmacro %}

{% macro not_bought_product_tagged(tag, within_days=none) -%}
    not {{ bought_product_tagged(tag, within_days) }}
{%- endmacro %}


{# ---------------------------------------------------------------- custom attributes #}

{#
    custom_attribute('vip') = true, custom_attribute('tier') = 'gold',
    custom_attribute('points', 'integer') > 100: a value of the subscriber's custom_attributes
    (JSON), as text by default or cast to `type` (null when absent or not of that type).
#}
{% macro custom_attribute(name, type=none) -%}
    {{ return(adapter.dispatch('custom_attribute')(name, type)) }}
{%- endmacro %}

{% macro default__custom_attribute(name, type=none) -%}
    {%- set value = "(custom_attributes::jsonb ->> " ~ sql_string(name) ~ ")" -%}
    {%- if type -%} cast({{ value }} as {{ type }}) {%- else -%} {{ value }} {%- endif -%}
{%- endmacro %}

{% macro duckdb__custom_attribute(name, type=none) -%}
    {%- set value = "json_extract_string(custom_attributes, " ~ sql_string('$."' ~ name ~ '"') ~ ")" -%}
    {%- if type -%} try_cast({{ value }} as {{ type }}) {%- else -%} {{ value }} {%- endif -%}
{%- endmacro %}

{# The attribute is present and truthy (true, "true", "yes", 1). #}
{% macro has_custom_attribute(name) -%}
    coalesce(lower({{ custom_attribute(name) }}) in ('true', 'yes', '1'), false)
{%- endmacro %}


{# ---------------------------------------------------------------- helpers #}

{% macro sql_string(value) -%}
    '{{ value | string | replace("'", "''") }}'
{%- endmacro %}

{% macro sql_string_list(values) -%}
    {%- for value in values -%}
        {{ sql_string(value) }}{{ ", " if not loop.last }}
    {%- endfor -%}
{%- endmacro %}
