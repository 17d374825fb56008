{#
    Every analyst segment's members in one table: one row per (account, segment, subscriber).
    The segments are the models under models/segments/, collected through the graph (see
    collect_segment_members), so adding a segment file is enough.

    klaviyo_as_of: the oldest last sync of the Klaviyo groups the segment uses in that account
    (its Klaviyo conditions are as of then); null when it uses none.
#}

-- What segment code may ref (dbt orders models by refs declared while parsing):
-- depends_on: {{ ref('subscribers') }}
-- depends_on: {{ ref('subscriber_klaviyo_memberships') }}
-- depends_on: {{ ref('subscriber_product_tags') }}

with

klaviyo_references as (

    select * from {{ ref('segment_klaviyo_references') }}

),

members_per_segment as (

    {{ collect_segment_members() }}

),

klaviyo_as_of_per_segment as (

    select
        account_id,
        segment_name,
        min(last_synced_at) as klaviyo_as_of

    from klaviyo_references
    group by account_id, segment_name

),

segment_members as (

    select
        members_per_segment.account_id,
        members_per_segment.segment_name,
        members_per_segment.subscriber_id,
        klaviyo_as_of_per_segment.klaviyo_as_of

    from members_per_segment
    left join klaviyo_as_of_per_segment
        on
            members_per_segment.account_id = klaviyo_as_of_per_segment.account_id
            and members_per_segment.segment_name = klaviyo_as_of_per_segment.segment_name

)

select * from segment_members
