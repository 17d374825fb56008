-- Clicked a Klaviyo email but did not purchase: in Klaviyo's "Clicked email, no purchase" or
-- "Engaged 30 days" segment, and no Recart purchase within 30 days.
select
    account_id,
    subscriber_id

from {{ ref('subscribers') }}
where
    (
        {{ in_klaviyo_segment('Clicked email, no purchase') }}
        or {{ in_klaviyo_segment('Engaged 30 days') }}
    )
    and {{ not_purchased_within_days(30) }}
