{#
    The push's desired-state view (models/push/klaviyo_push_desired_state.sql), checked in one
    evaluation. The view is computed from the whole raw subscriber table every time it is read, so
    six separate tests (a unique combination, three not_null, two accepted_values) cost six full
    evaluations (745k rows from 500k subscribers: 1.9 s for the six queries, 0.7 s for this one);
    this one reads it once and applies the same rules.

    One row per violation, `rule` naming the rule it breaks:
      - duplicate (account_id, channel, contact) among pushable rows (contact not null, no
        rejection_reason): one row per duplicated key, with rows_with_key;
      - account_id is null / channel is null / subscriber_id is null;
      - channel not in `channels`;
      - desired_state not in `desired_states` (null is allowed: rejected rows have none).
#}
{% test push_desired_state_is_well_formed(model, channels, desired_states) %}

    with

    -- Materialized: the six rules below read these rows, not the view six times.
    checked as materialized (

        select
            account_id,
            channel,
            contact,
            subscriber_id,
            desired_state,
            contact is not null and rejection_reason is null as is_pushable,
            count(*) over key_rows as rows_with_key,
            row_number() over (key_rows order by subscriber_id) as row_in_key

        from {{ model }}
        window key_rows as (
            partition by account_id, channel, contact, contact is not null and rejection_reason is null
        )

    ),

    violations as (

        select 'duplicate (account_id, channel, contact) among pushable rows' as rule, *
        from checked
        where is_pushable and rows_with_key > 1 and row_in_key = 1

        union all

        select 'account_id is null' as rule, *
        from checked
        where account_id is null

        union all

        select 'channel is null' as rule, *
        from checked
        where channel is null

        union all

        select 'subscriber_id is null' as rule, *
        from checked
        where subscriber_id is null

        union all

        select 'channel not in accepted values' as rule, *
        from checked
        where channel not in ({{ sql_string_list(channels) }})

        union all

        select 'desired_state not in accepted values' as rule, *
        from checked
        where desired_state not in ({{ sql_string_list(desired_states) }})

    )

    select
        rule,
        account_id,
        channel,
        contact,
        subscriber_id,
        desired_state,
        rows_with_key

    from violations

{% endtest %}

