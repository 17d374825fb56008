{#
    The subscriber push's mirror of each account's chosen lists (the settings live in the
    connection store; every push run writes its account's row here, see
    orchestration/subscriber_push.py). Created before the desired-state view, which joins it,
    so the view builds before any push has run.
#}
{% macro create_push_account_lists() -%}
    create table if not exists klaviyo_push.account_lists (
        account_id varchar primary key,
        email_list_id varchar,
        sms_list_id varchar,
        updated_at timestamptz not null
    )
{%- endmacro %}
