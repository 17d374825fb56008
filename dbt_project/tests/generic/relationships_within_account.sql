{#
    relationships, scoped to the Recart account: every (account_id, <column>) of the model exists
    as (account_id, <field>) in `to`. Ids are only unique within an account.

    recent_column: as in primary_key, check only the rows loaded recently unless --full-refresh.
#}
{% test relationships_within_account(model, column_name, to, field, recent_column=none) %}

    select
        child.account_id,
        child.{{ column_name }}

    from {{ model }} as child
    left join {{ to }} as parent
        on
            child.account_id = parent.account_id
            and child.{{ column_name }} = parent.{{ field }}
    where
        child.{{ column_name }} is not null
        and parent.{{ field }} is null
        {%- if recent_column and not flags.FULL_REFRESH %}
        and child.{{ recent_column }} >= {{ recent_rows_start(model, recent_column) }}
        {%- endif %}

{% endtest %}
