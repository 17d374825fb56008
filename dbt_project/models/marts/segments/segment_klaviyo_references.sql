{#
    Which Klaviyo groups each segment uses, per account: the literal names or ids in the
    segment's *klaviyo_segment(...) / *klaviyo_list(...) calls (read from its code through the
    graph), resolved against each account's catalog as the segment macros resolve them (the id,
    or the name case-insensitively). Feeds klaviyo_as_of of segment_members and outdated detection.
#}
with

groups as (

    select * from {{ ref('stg_klaviyo__groups') }}

),

sync_statuses as (

    select * from {{ ref('stg_klaviyo__group_sync_statuses') }}

),

references_in_code as (

    {{ klaviyo_references_in_segments() }}

),

references_resolved as (

    select distinct
        references_in_code.segment_name,
        groups.account_id,
        groups.group_id,
        groups.group_kind,
        groups.group_name,
        coalesce(sync_statuses.last_synced_at, groups.synced_at) as last_synced_at

    from references_in_code
    inner join groups
        on
            references_in_code.group_kind = groups.group_kind
            and {{ klaviyo_group_matches('groups.group_id', 'groups.group_name', 'references_in_code.referenced_as') }}
    left join sync_statuses
        on
            groups.account_id = sync_statuses.account_id
            and groups.group_id = sync_statuses.group_id

)

select * from references_resolved
