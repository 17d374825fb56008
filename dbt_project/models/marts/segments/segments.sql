{#
    The catalog of analyst segments: one row per model under models/segments/ (found through the
    graph at run time, so a new file appears here on the next run).
#}
with

catalog as (

    {{ segment_catalog_rows() }}

)

select * from catalog
