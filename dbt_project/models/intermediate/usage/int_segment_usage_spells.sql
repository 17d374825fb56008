{#
    When each analyst segment was in use: the periods in which a flow or campaign was linked to
    the segment (raw_segment_usages) AND was in a using state — a draft or active flow, a
    scheduled campaign — read from the change history up to the run's as-of time.

    One row per overlap: used_from, used_until (null: still in use).
#}
with

flow_changes as (

    select * from {{ ref('stg_recart__automated_flow_changes') }}

),

campaign_changes as (

    select * from {{ ref('stg_recart__campaign_changes') }}

),

usage_changes as (

    select * from {{ ref('stg_recart__segment_usage_changes') }}

),

consumer_changes as (

    select
        account_id,
        'flow' as consumer_type,
        flow_id as consumer_id,
        not is_deleted and flow_status in ('draft', 'active') as is_using,
        changed_at,
        loaded_at,
        source_file,
        source_row

    from flow_changes
    where changed_at <= {{ as_of_timestamp() }}

    union all

    select
        account_id,
        'campaign' as consumer_type,
        campaign_id as consumer_id,
        not is_deleted and campaign_status = 'scheduled' as is_using,
        changed_at,
        loaded_at,
        source_file,
        source_row

    from campaign_changes
    where changed_at <= {{ as_of_timestamp() }}

),

consumer_states as (

    select
        account_id,
        consumer_type,
        consumer_id,
        is_using,
        changed_at as state_from,
        lead(changed_at) over (
            partition by account_id, consumer_type, consumer_id
            order by changed_at, loaded_at, source_file, source_row
        ) as state_until

    from consumer_changes

),

link_states as (

    select
        account_id,
        consumer_type,
        consumer_id,
        segment_name,
        not is_deleted as is_linked,
        changed_at as state_from,
        lead(changed_at) over (
            partition by account_id, consumer_type, consumer_id, segment_name
            order by changed_at, loaded_at, source_file, source_row
        ) as state_until

    from usage_changes
    where changed_at <= {{ as_of_timestamp() }}

),

usage_spells as (

    select
        link_states.account_id,
        link_states.segment_name,
        link_states.consumer_type,
        link_states.consumer_id,
        greatest(link_states.state_from, consumer_states.state_from) as used_from,
        -- least() skips nulls, and null means "not ended": null only when both are open
        least(link_states.state_until, consumer_states.state_until) as used_until

    from link_states
    inner join consumer_states
        on
            link_states.account_id = consumer_states.account_id
            and link_states.consumer_type = consumer_states.consumer_type
            and link_states.consumer_id = consumer_states.consumer_id
    where
        link_states.is_linked
        and consumer_states.is_using
        and (consumer_states.state_until is null or link_states.state_from < consumer_states.state_until)
        and (link_states.state_until is null or consumer_states.state_from < link_states.state_until)

)

select * from usage_spells
