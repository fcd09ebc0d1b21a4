#!/usr/bin/env bash
# Install the RPM gateway on a board (Debian, Raspberry Pi OS, Ubuntu): a dedicated user, a venv
# under /opt, the systemd unit, udev rules for the supported USB devices, log rotation, and a config
# to edit. Run as root from a checkout: sudo deploy/gateway/install.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
prefix=/opt/rpm-gateway
conf_dir=/etc/rpm-gateway
data_dir=/var/lib/rpm-gateway

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }

apt-get install -y -qq python3-venv bluez >/dev/null
id rpm-gateway >/dev/null 2>&1 || useradd --system --home-dir "$data_dir" --shell /usr/sbin/nologin rpm-gateway
# Serial ports (dialout) and the BlueZ D-Bus API (bluetooth) without running as root.
usermod -a -G dialout,bluetooth rpm-gateway

python3 -m venv "$prefix"
"$prefix/bin/pip" install -q "$repo[gateway]"

install -d -o rpm-gateway -g rpm-gateway -m 0750 "$data_dir"
install -d -m 0755 "$conf_dir"
if [ ! -f "$conf_dir/gateway.toml" ]; then
  install -m 0640 -g rpm-gateway "$repo/deploy/gateway/gateway.example.toml" "$conf_dir/gateway.toml"
  echo "edit $conf_dir/gateway.toml (gateway_id, mqtt.url, credentials), then: systemctl restart rpm-gateway"
fi

install -m 0644 "$repo"/deploy/udev/*.rules /etc/udev/rules.d/
udevadm control --reload-rules && udevadm trigger --subsystem-match=tty || true

install -m 0644 "$here/logrotate" /etc/logrotate.d/rpm-gateway
install -m 0644 "$repo/deploy/systemd/rpm-gateway.service" /etc/systemd/system/rpm-gateway.service
systemctl daemon-reload
systemctl enable --now rpm-gateway
systemctl --no-pager status rpm-gateway || true
