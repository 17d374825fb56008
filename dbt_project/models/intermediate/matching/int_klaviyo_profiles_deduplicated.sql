{# A view: its one reader (matching) computes it once; writing its 1M rows cost more (~1 s at bench scale). #}

{#
    Klaviyo profiles are known here through their current group memberships. A profile in several
    groups appears in each spell; its identifiers come from the most recently loaded one.
#}
with

group_members as (

    select * from {{ ref('stg_klaviyo__group_members') }}

),

current_spells_ranked as (

    select
        group_members.account_id,
        group_members.profile_id,
        group_members.external_id,
        group_members.email,
        group_members.phone_number,
        row_number() over (
            partition by group_members.account_id, group_members.profile_id
            order by
                group_members.loaded_at desc,
                group_members.valid_from desc,
                group_members.group_id asc
        ) as recency_rank

    from group_members
    where group_members.is_current

),

profiles as (

    select
        account_id,
        profile_id,
        external_id,
        email,
        phone_number

    from current_spells_ranked
    where recency_rank = 1

)

select * from profiles
