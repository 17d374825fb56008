{#
    Current Klaviyo segment and list membership per Recart subscriber, through the subscriber's
    matched profiles, with the time it is from (klaviyo_as_of: the group's last membership sync).
#}
with

group_members as (

    select * from {{ ref('stg_klaviyo__group_members') }}

),

matches as (

    select * from {{ ref('int_subscribers_matched_to_klaviyo_profiles') }}

),

groups as (

    select * from {{ ref('stg_klaviyo__groups') }}

),

sync_statuses as (

    select * from {{ ref('stg_klaviyo__group_sync_statuses') }}

),

purchases as (

    select * from {{ ref('int_purchases_aggregated_to_subscribers') }}

),

memberships_per_subscriber as (

    select
        matches.account_id,
        matches.subscriber_id,
        group_members.group_id,
        min(group_members.valid_from) as first_joined_at,
        max(group_members.valid_from) as joined_at,
        -- a profile has one current spell per group (tested on stg_klaviyo__group_members), and
        -- one match row per subscriber: count(*) counts profiles, without a distinct aggregation
        count(*) as matched_profile_count

    from group_members
    inner join matches
        on
            group_members.account_id = matches.account_id
            and group_members.profile_id = matches.profile_id
    where group_members.is_current
    group by matches.account_id, matches.subscriber_id, group_members.group_id

),

memberships as (

    select
        memberships_per_subscriber.account_id,
        memberships_per_subscriber.subscriber_id,
        memberships_per_subscriber.group_id,
        groups.group_kind,
        groups.group_name,
        memberships_per_subscriber.first_joined_at,
        memberships_per_subscriber.joined_at,
        memberships_per_subscriber.matched_profile_count,
        coalesce(purchases.last_order_at >= memberships_per_subscriber.joined_at, false)
            as has_purchased_since_joining,
        coalesce(sync_statuses.last_synced_at, groups.synced_at) as klaviyo_as_of

    from memberships_per_subscriber
    inner join groups
        on
            memberships_per_subscriber.account_id = groups.account_id
            and memberships_per_subscriber.group_id = groups.group_id
    left join sync_statuses
        on
            memberships_per_subscriber.account_id = sync_statuses.account_id
            and memberships_per_subscriber.group_id = sync_statuses.group_id
    left join purchases
        on
            memberships_per_subscriber.account_id = purchases.account_id
            and memberships_per_subscriber.subscriber_id = purchases.subscriber_id

)

select * from memberships
