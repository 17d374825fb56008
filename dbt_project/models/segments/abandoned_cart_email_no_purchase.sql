-- Received a Klaviyo abandoned-cart email but did not purchase: a member of Klaviyo's
-- "Abandoned cart 7 days" segment with no Recart purchase since (most recently) joining it.
select
    account_id,
    subscriber_id

from {{ ref('subscribers') }}
where {{ not_purchased_since_joining_klaviyo_segment('Abandoned cart 7 days') }}
