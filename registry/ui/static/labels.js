// Chinese names of the API's codes, shared by the board and the incident page.

export const KIND_NAMES = Object.freeze({
  gas_alarm: "燃气泄漏报警",
  valve_not_closed: "阀门未确认关闭",
  device_fault: "设备故障",
  end_of_life: "设备到期",
  offline: "设备离线",
  low_battery: "电池电量低",
  mains_loss: "市电中断",
  cluster: "群发报警",
  alerting_behind: "报警服务滞后",
});

export const STATE_NAMES = Object.freeze({
  NEW: "新报警",
  NOTIFIED: "已通知",
  ACKNOWLEDGED: "已确认",
  DISPATCHED: "已派单",
  ON_SITE: "已到场",
  RESOLVED: "已处置",
  CLOSED: "已办结",
});

export const SEVERITY_NAMES = Object.freeze({ critical: "紧急", warning: "警告", info: "提示" });

export const COMMAND_NAMES = Object.freeze({ close: "关闭", self_test: "自检" });

// What the valve itself reported; "closed" only on its own report.
export const VALVE_REPORT_NAMES = Object.freeze({
  closing: "关闭中",
  closed: "已关闭",
  unconfirmed: "未确认",
  refused: "拒绝执行",
  fault: "故障",
});

export const VALVE_REPORT_CLASS = Object.freeze({
  closing: "st-warn",
  closed: "st-ok",
  unconfirmed: "st-bad",
  refused: "st-bad",
  fault: "st-bad",
});

export const DISPOSITION_NAMES = Object.freeze({
  real_leak: "真实泄漏",
  appliance_fault: "器具故障",
  false_alarm_cooking: "烹饪或酒精误报",
  device_fault: "设备故障",
  test: "测试",
});

export const DEVICE_KIND_NAMES = Object.freeze({
  alarm: "可燃气体报警器",
  shutoff_valve: "切断阀",
  self_closing_valve: "自闭阀",
  hose: "金属软管",
  regulator: "调压器",
});

export const DEVICE_STATUS_NAMES = Object.freeze({
  normal: "正常",
  alarm: "报警",
  fault: "故障",
  end_of_life: "到期",
  unknown: "未知/离线",
});

export const DEVICE_STATUS_CLASS = Object.freeze({
  normal: "st-ok",
  alarm: "st-bad",
  fault: "st-bad",
  end_of_life: "st-warn",
  unknown: "st-unknown",
});

export const TIMELINE_NAMES = Object.freeze({
  opened: "报警，事件创建",
  repeat_alarm: "重复报警",
  valve_command_sent: "已发送关阀指令",
  valve_closed: "阀门上报已关闭",
  escalation_step: "升级通知",
  notified: "已通知",
  acknowledged: "已确认",
  callback: "回访",
  dispatched: "已派单",
  on_site: "到场记录",
  resolved: "已处置",
  closed: "已办结",
  behind: "报警服务再次滞后",
  caught_up: "报警服务已追上",
});

export const NOTIFICATION_STATUS_NAMES = Object.freeze({
  pending: "待发送", sent: "已发送", delivered: "已送达", failed: "发送失败", undeliverable: "未送达",
  blocked: "超出限额未发送", digested: "已并入汇总短信",
});
export const RECIPIENT_ROLE_NAMES = Object.freeze({ resident: "住户", operator: "值班员", emergency: "应急管理" });
export const COMMAND_STATE_NAMES = Object.freeze({
  sent: "已发送", acked: "设备已应答", refused: "设备拒绝", confirmed: "已确认关闭", failed: "失败", expired: "已过期",
});

/** 镇 › 社区 › 楼/单元/室 of a board row's place (community-wide incidents stop at the community). */
export function placeText(place, scope) {
  const parts = [place.town_name, place.community_name].filter(Boolean);
  if (place.building) {
    const room = place.room ? (/室$/.test(place.room) ? place.room : place.room + "室") : "";
    parts.push(`${place.building}${place.unit || ""}${room}`);
  } else if (scope && scope.startsWith("building:")) {
    parts.push(scope.split(":").slice(2).join(":"));
  } else if (scope && scope.startsWith("system:alerting:")) {
    return `燃气报警服务（${scope.slice("system:alerting:".length)}）`;
  }
  return parts.length ? parts.join(" › ") : scope || "—";
}

/** The escalation column: 未升级, 第N级, or 已停止 once someone owns the incident. */
export function escalationText(step, stopped) {
  const base = step > 0 ? `第${step}级` : "未升级";
  return stopped ? `${base}（已停止）` : base;
}
