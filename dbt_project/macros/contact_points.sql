{#
    Contact points are normalised once, in staging, with these macros; everything downstream
    (matching, segments, the subscriber push) compares the normalised values.
#}

{#
    An email address lower-cased and trimmed; null when empty or (validate) not shaped like an
    address. validate=false for sources that only hold valid addresses (Klaviyo).
#}
{% macro normalize_email(column, validate=true) -%}
    {%- if validate -%}
    case
        when {{ is_email_shaped('lower(trim(' ~ column ~ '))') }}
            then lower(trim({{ column }}))
    end
    {%- else -%}
    nullif(lower(trim({{ column }})), '')
    {%- endif -%}
{%- endmacro %}


{% macro is_email_shaped(expression) -%}
    {{ return(adapter.dispatch('is_email_shaped')(expression)) }}
{%- endmacro %}

{% macro default__is_email_shaped(expression) -%}
    {{ expression }} ~ '^[^@[:space:]]+@[^@[:space:]]+[.][^@[:space:].]+$'
{%- endmacro %}

{% macro duckdb__is_email_shaped(expression) -%}
    regexp_full_match({{ expression }}, '[^@\s]+@[^@\s]+[.][^@\s.]+')
{%- endmacro %}


{#
    A phone number in E.164 (+<country code><number>), or null when it cannot be read.

    Numbers written with a leading + (or 00 / 011) carry their country; others are read in
    `country` (a SQL expression giving 'US', 'CA', 'GB' or 'AU', see default_phone_country):
      US/CA  (415) 555-2671, 415.555.2671, 1-415-555-2671        -> +14155552671
      GB     07911 123456, 7911 123456, 44 7911 123456           -> +447911123456
      AU     0412 345 678, 412 345 678, 61 412 345 678           -> +61412345678
    "+44 (0)7911 123456" drops the national trunk 0. Anything else (too short or long, unknown
    country) is null, and stg models keep the value as given for subscriber_contact_rejections.
#}
{% macro normalize_phone(column, country="'US'") -%}
    {%- set digits = "regexp_replace(" ~ column ~ ", '[^0-9]', '', 'g')" -%}
    {%- set n = "length(" ~ digits ~ ")" -%}
    case
        when {{ digits }} = '' then null
        when trim({{ column }}) like '+%' then
            case
                when {{ digits }} like '440%' or {{ digits }} like '610%'
                    then '+' || substr({{ digits }}, 1, 2) || substr({{ digits }}, 4)
                when {{ n }} between 8 and 15 and {{ digits }} not like '0%'
                    then '+' || {{ digits }}
            end
        when {{ digits }} like '011%' and {{ country }} in ('US', 'CA') then
            case when {{ n }} between 11 and 18 then '+' || substr({{ digits }}, 4) end
        when {{ digits }} like '00%' and {{ country }} in ('GB', 'AU') then
            case when {{ n }} between 10 and 17 then '+' || substr({{ digits }}, 3) end
        when {{ country }} in ('US', 'CA') then
            case
                when {{ n }} = 10 and substr({{ digits }}, 1, 1) between '2' and '9'
                    then '+1' || {{ digits }}
                when {{ n }} = 11 and {{ digits }} like '1%' and substr({{ digits }}, 2, 1) between '2' and '9'
                    then '+' || {{ digits }}
            end
        when {{ country }} = 'GB' then
            case
                when {{ n }} = 11 and {{ digits }} like '0%' then '+44' || substr({{ digits }}, 2)
                when {{ n }} = 10 and {{ digits }} not like '0%' then '+44' || {{ digits }}
                when {{ n }} = 12 and {{ digits }} like '44%' then '+' || {{ digits }}
            end
        when {{ country }} = 'AU' then
            case
                when {{ n }} = 10 and {{ digits }} like '0%' then '+61' || substr({{ digits }}, 2)
                when {{ n }} = 9 and {{ digits }} not like '0%' then '+61' || {{ digits }}
                when {{ n }} = 11 and {{ digits }} like '61%' then '+' || {{ digits }}
            end
    end
{%- endmacro %}


{#
    The default country of an account's phone numbers: var('phone_default_countries')
    ({account_id: 'GB'}) or var('phone_default_country') ('US', i.e. +1).
#}
{% macro default_phone_country(account_id_column) -%}
    {%- set by_account = var('phone_default_countries', {}) or {} -%}
    {%- set fallback = var('phone_default_country', 'US') -%}
    {%- if by_account -%}
        case {{ account_id_column }}
        {%- for account_id, country in by_account.items() %}
            when '{{ account_id | replace("'", "''") }}' then '{{ country | upper }}'
        {%- endfor %}
            else '{{ fallback | upper }}'
        end
    {%- else -%}
        '{{ fallback | upper }}'
    {%- endif -%}
{%- endmacro %}
