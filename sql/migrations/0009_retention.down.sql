-- Reverts revision 0009: the workers' retention lease and its log of passes.
drop table outbox.maintenance_runs;
drop table outbox.maintenance_leases;
