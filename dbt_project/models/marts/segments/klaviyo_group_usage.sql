{#
    Per account and Klaviyo group: is a Recart flow or campaign using it, when was it last used,
    and is it outdated. The Dagster segment sync skips outdated groups.

    "Used": a draft or active flow, or a scheduled campaign, uses an analyst segment that
    references the group (segment_klaviyo_references). last_used_at is the run's as-of time while
    in use, else when the last such use stopped (a flow paused or archived, a campaign sent or
    cancelled, a consumer or usage deleted). A group never used counts from when it was first
    loaded (first_seen_at). is_outdated: not used for var('klaviyo_group_outdated_after_days')
    (14) days.
#}
with

groups as (

    select * from {{ ref('stg_klaviyo__groups') }}

),

sync_statuses as (

    select * from {{ ref('stg_klaviyo__group_sync_statuses') }}

),

group_members as (

    select * from {{ ref('stg_klaviyo__group_members') }}

),

klaviyo_references as (

    select * from {{ ref('segment_klaviyo_references') }}

),

usage_spells as (

    select * from {{ ref('int_segment_usage_spells') }}

),

first_seen_per_group as (

    select
        account_id,
        group_id,
        min(loaded_at) as first_seen_at

    from group_members
    group by account_id, group_id

),

usage_per_group as (

    select
        klaviyo_references.account_id,
        klaviyo_references.group_id,
        count(distinct klaviyo_references.segment_name) as referencing_segment_count,
        count(distinct case
            when usage_spells.used_from is not null and usage_spells.used_until is null
                then usage_spells.consumer_type || ':' || usage_spells.consumer_id
        end) as current_consumer_count,
        max(usage_spells.used_until) as last_use_stopped_at

    from klaviyo_references
    left join usage_spells
        on
            klaviyo_references.account_id = usage_spells.account_id
            and klaviyo_references.segment_name = usage_spells.segment_name
    group by klaviyo_references.account_id, klaviyo_references.group_id

),

groups_with_usage as (

    select
        groups.account_id,
        groups.group_id,
        groups.group_kind,
        groups.group_name,
        coalesce(usage_per_group.referencing_segment_count, 0) as referencing_segment_count,
        coalesce(usage_per_group.current_consumer_count, 0) as current_consumer_count,
        coalesce(usage_per_group.current_consumer_count, 0) > 0 as is_in_use,
        case
            when coalesce(usage_per_group.current_consumer_count, 0) > 0 then {{ as_of_timestamp() }}
            else usage_per_group.last_use_stopped_at
        end as last_used_at,
        coalesce(first_seen_per_group.first_seen_at, sync_statuses.last_synced_at, groups.synced_at)
            as first_seen_at,
        coalesce(sync_statuses.last_synced_at, groups.synced_at) as last_synced_at

    from groups
    left join usage_per_group
        on
            groups.account_id = usage_per_group.account_id
            and groups.group_id = usage_per_group.group_id
    left join sync_statuses
        on
            groups.account_id = sync_statuses.account_id
            and groups.group_id = sync_statuses.group_id
    left join first_seen_per_group
        on
            groups.account_id = first_seen_per_group.account_id
            and groups.group_id = first_seen_per_group.group_id

),

group_usage as (

    select
        *,
        coalesce(last_used_at, first_seen_at)
        < {{ days_before_as_of(var('klaviyo_group_outdated_after_days')) }} as is_outdated,
        {{ as_of_timestamp() }} as as_of

    from groups_with_usage

)

select * from group_usage
