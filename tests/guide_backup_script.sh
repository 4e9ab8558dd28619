#!/bin/bash
# /usr/local/bin/rustydb-backup.sh
# Automated backup script for RustyDB v0.6.5

# Configuration
BACKUP_DIR="/backups/rustydb"
RETENTION_DAYS=30
S3_BUCKET="s3://company-rustydb-backups"
DATE=$(date +%Y%m%d_%H%M%S)
DAY_OF_WEEK=$(date +%u)  # 1-7 (Monday-Sunday)
LOG_FILE="/var/log/rustydb-backup.log"
ALERT_EMAIL="dba-team@company.com"

# Create backup directory
mkdir -p $BACKUP_DIR

# Log function
log() {
    echo "[$(date '+%Y-%m-%d %H:%M:%S')] $1" | tee -a $LOG_FILE
}

log "Starting backup process"

# Determine backup type
if [ "$DAY_OF_WEEK" -eq 7 ]; then
    # Sunday: Full backup
    BACKUP_TYPE="full"
    BACKUP_FILE="$BACKUP_DIR/full_${DATE}.backup"

    log "Creating full backup"
    curl -s -X POST http://localhost:8080/api/v1/admin/backup \
      -H "Content-Type: application/json" \
      -d '{
        "backup_type": "full",
        "compression": true,
        "encryption": true
      }' > /tmp/backup_response.json
else
    # Mon-Sat: Incremental backup
    BACKUP_TYPE="incremental"
    BACKUP_FILE="$BACKUP_DIR/incr_${DATE}.backup"

    log "Creating incremental backup"
    curl -s -X POST http://localhost:8080/api/v1/admin/backup \
      -H "Content-Type: application/json" \
      -d '{
        "backup_type": "incremental",
        "compression": true,
        "encryption": true
      }' > /tmp/backup_response.json
fi

# Check backup status
BACKUP_ID=$(jq -r '.backup_id' /tmp/backup_response.json)
STATUS=$(jq -r '.status' /tmp/backup_response.json)

if [ "$STATUS" = "in_progress" ]; then
    log "Backup started: $BACKUP_ID"
else
    log "ERROR: Backup failed to start"
    echo "Backup failed" | mail -s "RustyDB Backup Alert" $ALERT_EMAIL
    exit 1
fi

# Clean up old backups
log "Cleaning up backups older than $RETENTION_DAYS days"
find $BACKUP_DIR -name "*.backup" -mtime +$RETENTION_DAYS -delete

# Upload to S3 (optional)
if [ ! -z "$S3_BUCKET" ]; then
    log "Uploading backup to S3"
    aws s3 sync $BACKUP_DIR $S3_BUCKET \
      --storage-class GLACIER \
      --exclude "*" \
      --include "*.backup" \
      --region us-east-1

    if [ $? -eq 0 ]; then
        log "S3 upload successful"
    else
        log "WARNING: S3 upload failed"
    fi
fi

log "Backup process completed"
