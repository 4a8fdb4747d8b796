"""The annotation pillar: the daily work queues (annotation_queue, audit_queue) the annotation app serves."""
